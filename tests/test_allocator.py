"""selfreg.train.allocator: glibc keeps freed memory for the next training step."""
import subprocess
import sys

from procs import REPO, env_with_src


def child(code: str, **env: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=env_with_src(**env), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


PROBE = "from selfreg.train.allocator import keep_freed_memory as k; print(k(), k())"


def test_glibc_takes_the_settings_once_and_the_opt_out_is_honoured():
    # A fresh process each (the settings are per process); no torch is imported for this.
    import platform

    expected = "True True" if platform.libc_ver()[0] == "glibc" else "False False"
    assert child(PROBE) == expected
    assert child(PROBE, SELFREG_MALLOC="system") == "False False"
