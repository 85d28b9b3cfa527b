"""``python -m lava_spiked.export``: convert a model (the bundled ones or a
Hugging Face checkpoint) and save its Plan, or report on a saved file."""
import argparse
import pathlib
import typing as ty

import numpy as np

from lava_spiked.export.hdf5 import ExportError, load, save
from lava_spiked.network import SpikingNetwork
from lava_spiked.plan import TARGETS, loihi2
from lava_spiked.plan.resources import resources
from lava_spiked.validation import check_base_choice, check_steps


def main(argv: ty.Optional[ty.Sequence[str]] = None) -> None:
    """``python -m lava_spiked.export``: convert a model and save it, or
    report on a saved file."""
    from lava_spiked.validation import cli_type
    parser = argparse.ArgumentParser(
        prog="python -m lava_spiked.export",
        description="Convert a model and save its Plan, or print the "
        "resources of a saved file. MODEL is 'bundled' (the digits ViT, "
        "calibrated on its own calibration split), 'minilm-sentiment' "
        "(all-MiniLM-L6-v2 with the shipped head, calibrated on the "
        "calibration tweets) or the directory of a Hugging Face "
        "checkpoint with a head (a *ForSequenceClassification of BERT, "
        "RoBERTa, DistilBERT, ELECTRA, ALBERT, ..., or a causal language "
        "model such as GPT2LMHeadModel), calibrated on --calibration.")
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="bundled, minilm-sentiment or a checkpoint "
                        "directory")
    parser.add_argument("out", nargs="?", metavar="OUT.h5",
                        help="the HDF5 file to write")
    parser.add_argument("--calibration", metavar="FILE",
                        help="for a checkpoint: an .npz of tokenised "
                        "calibration samples, the tokenizer's input_ids and "
                        "attention_mask (and token_type_ids), padded to the "
                        "length the network takes, e.g. np.savez(FILE, "
                        "**tokenizer(texts, padding='max_length', "
                        "max_length=64, truncation=True, "
                        "return_tensors='np'))")
    parser.add_argument("--T", type=cli_type(check_steps, int), default=40)
    parser.add_argument("--B", type=cli_type(check_base_choice, str),
                        default=1.15, help="base (1, 2], or 'auto': the "
                        "base of least readout error on the calibration "
                        "samples (recorded in the file)")
    parser.add_argument("--target", choices=TARGETS, default="lava",
                        help="integer formats: Lava's, or conformant to "
                        "Loihi 2 (lava_spiked.plan.loihi2.conform)")
    parser.add_argument("--strict", action="store_true",
                        help="refuse to write a Plan that does not fit "
                        "Loihi 2")
    parser.add_argument("--report", metavar="FILE",
                        help="print the resources of a saved file and what "
                        "in it does not fit Loihi 2")
    args = parser.parse_args(argv)
    if args.report:
        try:
            plan = load(args.report).plan
        except ExportError as err:
            parser.error(str(err))
        print(resources(plan), "", "Loihi 2 conventions:", loihi2.report(plan),
              sep="\n")
        return
    if not (args.model and args.out):
        parser.error("give MODEL and OUT.h5, or --report FILE")
    code = dict(B=args.B, T=args.T, target=args.target)
    if args.model == "bundled":
        from lava_spiked.conversion import convert
        from lava_spiked.bundled.digits_vit import digits_splits, load_default
        net = convert(load_default(), digits_splits()["calibration"][0],
                      **code)
    elif args.model == "minilm-sentiment":
        from lava_spiked.bundled.text_data import convert_minilm
        net = convert_minilm(**code)
    else:
        net = _convert_checkpoint(parser, args, code)
    try:
        save(net, args.out, strict=args.strict)
    except ValueError as err:
        parser.error(str(err))
    chosen = " (auto)" if net.plan.code_choice is not None else ""
    print(f"wrote {args.out} (T = {args.T}, B = {net.B}{chosen}, target "
          f"{args.target})")
    print(resources(net.plan))


#: Architecture name endings the CLI converts -> the transformers Auto
#: class that loads them
_HEADS = {"ForSequenceClassification": "AutoModelForSequenceClassification",
          "LMHeadModel": "AutoModelForCausalLM",
          "ForCausalLM": "AutoModelForCausalLM"}


def _convert_checkpoint(parser, args, code: dict) -> SpikingNetwork:
    """A Hugging Face checkpoint directory with a head, calibrated on the
    tokenised samples of ``--calibration``."""
    if not pathlib.Path(args.model).is_dir():
        parser.error(f"MODEL {args.model!r} is neither 'bundled', "
                     "'minilm-sentiment' nor a checkpoint directory")
    if not args.calibration:
        parser.error("a checkpoint needs --calibration FILE (tokenised "
                     "samples; see --help)")
    import transformers

    from lava_spiked.huggingface import convert
    config = transformers.AutoConfig.from_pretrained(args.model,
                                                     local_files_only=True)
    kinds = [auto for arch in config.architectures or []
             for end, auto in _HEADS.items() if arch.endswith(end)]
    if not kinds:
        parser.error(f"{args.model}: a {config.architectures} checkpoint; "
                     "this command takes a model with a head (names ending "
                     f"in {', '.join(_HEADS)}); for a bare model with a "
                     "head of your own, call lava_spiked.huggingface."
                     "convert(..., head=) and lava_spiked.export.save")
    model = getattr(transformers, kinds[0]).from_pretrained(
        args.model, local_files_only=True).eval()
    with np.load(args.calibration) as f:
        encodings = {k: f[k] for k in f.files}
    if "input_ids" not in encodings:
        parser.error(f"{args.calibration}: no input_ids (keys "
                     f"{sorted(encodings)}); see --help")
    return convert(model, encodings, length=encodings["input_ids"].shape[1],
                   **code)


if __name__ == "__main__":
    main()
