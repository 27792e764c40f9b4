"""Engine harness: runs a real Pulumi program (preview/up/destroy) without the Pulumi CLI.

`harness.engine.run(...)` is the Python API; `python -m harness` the CLI; `harness.state.load(...)`
reads a stack's decrypted state for assertions.
"""
