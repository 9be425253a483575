"""Optional compiled accelerators, isolated: each has a pure-PyTorch reference it is
tested equal to and falls back to (docs/heads/lmdl.md, "CPU kernel")."""
