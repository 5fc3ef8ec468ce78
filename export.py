"""
Export a trained model as a Hugging Face GPT-2 directory (transformers' GPT2LMHeadModel).

    python export.py --out_dir out/tinystories --hf_dir hf/tinystories
    python -c "from transformers import GPT2LMHeadModel; GPT2LMHeadModel.from_pretrained('hf/tinystories')"

The directory holds config.json, model.safetensors, the tokenizer (GPT-2 BPE: vocab.json and
merges.txt, which AutoTokenizer loads; a char model: its table in README.md and nanogpt.json) and a
README.md saying how to encode text. train.py --init_from=DIR and sample.py --out_dir DIR read it
back. The conversion itself lives in hf.py.
"""

import sys
from dataclasses import dataclass

if __name__ == "__main__":  # Ctrl-C while torch loads exits quietly; run() gives it back its usual meaning
    __import__("configurator").quiet_interrupts()
from configurator import parse_args, run
from checkpoint import find
from hf import check_export_target, export_hf, is_hf_dir
from loading import describe, load_model


@dataclass
class ExportConfig:
    """Write a checkpoint as a Hugging Face GPT-2 directory that GPT2LMHeadModel.from_pretrained loads."""
    out_dir: str = "out"  # a run folder, a checkpoint file, or a folder whose newest run is used
    hf_dir: str = "hf"  # the directory to write (refused if it exists and is not empty, unless --overwrite)
    overwrite: bool = False  # replace the files of an earlier export in hf_dir (only over an export: its nanogpt.json says so; other files stay)


def export(cfg, info=None):
    """Export the model cfg.out_dir points to into cfg.hf_dir; returns the files written."""
    info = info or (lambda msg: print(msg, file=sys.stderr))
    source = cfg.out_dir if is_hf_dir(cfg.out_dir) else find(cfg.out_dir)
    check_export_target(cfg.hf_dir, cfg.overwrite, source)  # before the model is read: a wrong folder fails at once
    model, _, path, meta = load_model(cfg.out_dir, "cpu")
    files = export_hf(model, meta["tokenizer"], cfg.hf_dir, cfg.overwrite, source=describe(path, meta), source_path=path)
    info(f"exported {describe(path, meta)} to {cfg.hf_dir}: {', '.join(files)}")
    return files


def main(argv=None):
    export(parse_args(ExportConfig, argv, prog="export.py"))


if __name__ == "__main__":
    run(main)
