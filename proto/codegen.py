"""Regenerate the protobuf and gRPC code from `proto/stackline/v1/stackline.proto`.

Run `python -m proto.codegen` after changing the schema and commit the output;
`python -m proto.codegen --check` exits non-zero when the committed code has drifted.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

__all__ = ["GENERATED_FILES", "SCHEMA", "generate", "main"]

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path("proto/stackline/v1/stackline.proto")
GENERATED_FILES = (
    "stackline_pb2.py",
    "stackline_pb2.pyi",
    "stackline_pb2_grpc.py",
    "stackline_pb2_grpc.pyi",
)


def generate(out_dir: Path) -> None:
    """Run protoc (from grpcio-tools) with the mypy-protobuf plugins into `out_dir`."""
    from grpc_tools import protoc  # noqa: PLC0415 - a development dependency, needed only here

    out_dir.mkdir(parents=True, exist_ok=True)
    # The mypy-protobuf plugins live beside this interpreter; name them so that running
    # `.venv/bin/python -m proto.codegen` (as `make codegen-check` does) works without an
    # activated virtual environment on PATH.
    bin_dir = Path(sys.executable).parent
    plugins = [
        f"--plugin=protoc-gen-{name}={bin_dir / f'protoc-gen-{name}'}"
        for name in ("mypy", "mypy_grpc")
        if (bin_dir / f"protoc-gen-{name}").is_file()
    ]
    args = [
        "protoc",
        *plugins,
        f"-I{ROOT}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        str(ROOT / SCHEMA),
    ]
    status = protoc.main(args)
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")


def main(argv: list[str] | None = None) -> int:
    """Regenerate, or with --check compare, the committed generated code."""
    parser = argparse.ArgumentParser(prog="python -m proto.codegen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report drift")
    args = parser.parse_args(argv)
    target = ROOT / SCHEMA.parent
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        produced = Path(tmp) / SCHEMA.parent
        drifted = [
            name
            for name in GENERATED_FILES
            if not (target / name).exists()
            or not filecmp.cmp(produced / name, target / name, shallow=False)
        ]
        if args.check:
            for name in drifted:
                print(f"drift: {SCHEMA.parent / name} differs from what {SCHEMA} generates")
            if drifted:
                print("run `python -m proto.codegen` and commit the result")
            return 1 if drifted else 0
        for name in GENERATED_FILES:
            (target / name).write_bytes((produced / name).read_bytes())
            print(f"wrote {SCHEMA.parent / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
