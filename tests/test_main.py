import subprocess
import sys

import unimargin


def test_python_dash_m_unimargin_is_the_cli():
    done = subprocess.run([sys.executable, "-m", "unimargin", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert unimargin.__version__ in done.stdout + done.stderr


def test_public_api_names():
    # (other test modules register heads of their own: the built-ins are a subset)
    assert {"softmax", "normface", "cosface", "arcface", "center", "lmdl", "bce-u", "bce-d"} <= set(
        unimargin.list_heads())
    head = unimargin.build_head("bce-u", num_classes=3, feat_dim=4)
    assert isinstance(head, unimargin.Head)
    assert head.bias.shape == ()
