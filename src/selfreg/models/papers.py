"""The papers our models come from, one constant each: the `paper=` of `register_model`.

Every model file and the zoo take their citations from here, so a paper that two families
share (He et al. 2016: the CIFAR ResNets and ResNet-18/34/50; Hu et al. 2018: SE-ResNets
here and in timm) is written once.
"""
from __future__ import annotations

LECUN_1998_BN = ("LeCun et al., Gradient-Based Learning Applied to Document Recognition, 1998; with BN of "
                 "Ioffe & Szegedy, ICML 2015 (as in Dive into Deep Learning, sec. 8.5)")
KRIZHEVSKY_2012 = "Krizhevsky et al., ImageNet Classification with Deep Convolutional Neural Networks, NIPS 2012"
LIN_2014 = "Lin et al., Network In Network, ICLR 2014"
SIMONYAN_2015 = ("Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, "
                 "ICLR 2015")
SZEGEDY_2015 = "Szegedy et al., Going Deeper with Convolutions, CVPR 2015"
HE_2016 = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"
SZEGEDY_2016 = "Szegedy et al., Rethinking the Inception Architecture for Computer Vision, CVPR 2016"
IANDOLA_2016 = ("Iandola et al., SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB "
                "model size, 2016")
ZAGORUYKO_2016 = "Zagoruyko & Komodakis, Wide Residual Networks, BMVC 2016"
HUANG_2017 = "Huang et al., Densely Connected Convolutional Networks, CVPR 2017"
XIE_2017 = "Xie et al., Aggregated Residual Transformations for Deep Neural Networks, CVPR 2017"
HOWARD_2017 = ("Howard et al., MobileNets: Efficient Convolutional Neural Networks for Mobile Vision "
               "Applications, 2017")
CHOLLET_2017 = "Chollet, Xception: Deep Learning with Depthwise Separable Convolutions, CVPR 2017"
HU_2018 = "Hu et al., Squeeze-and-Excitation Networks, CVPR 2018"
ZHANG_2018 = ("Zhang et al., ShuffleNet: An Extremely Efficient Convolutional Neural Network for "
              "Mobile Devices, CVPR 2018")
SANDLER_2018 = "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018"
MA_2018 = "Ma et al., ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design, ECCV 2018"
REDMON_2018 = "Redmon & Farhadi, YOLOv3: An Incremental Improvement, 2018 (Darknet-53)"
TAN_2019 = "Tan & Le, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks, ICML 2019"
TAN_2021 = "Tan & Le, EfficientNetV2: Smaller Models and Faster Training, ICML 2021"
DOSOVITSKIY_2021 = ("Dosovitskiy et al., An Image is Worth 16x16 Words: Transformers for Image Recognition at "
                    "Scale, ICLR 2021")
TOLSTIKHIN_2021 = "Tolstikhin et al., MLP-Mixer: An all-MLP Architecture for Vision, NeurIPS 2021"
TOUVRON_2021 = ("Touvron et al., ResMLP: Feedforward Networks for Image Classification with Data-Efficient "
                "Training, 2021")
LIU_2021 = "Liu et al., Pay Attention to MLPs, NeurIPS 2021 (gMLP)"
XU_2022 = "Xu et al., RegNet: Self-Regulated Network for Image Classification, TNNLS 2022"
