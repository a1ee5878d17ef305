"""`aaudit auditor preset` and `aaudit auditor import-dataset`: the auditor's spec and data, made locally.

Both run on the auditor's machine only and talk to no enclave: `preset` writes a spec from lm-eval's
own task configs (benchmarks.presets), `import-dataset` turns a locally saved Hugging Face dataset
into the JSONL file that spec reads (benchmarks.import_dataset).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from verifier.errors import UnusableInput


def register_auditor(rsub: argparse._SubParsersAction) -> None:
    """Add `preset` and `import-dataset` to the `aaudit auditor` subcommands."""
    p = rsub.add_parser("preset", help="write a spec for lm-eval's built-in benchmarks, or list them",
                        description="Write an audit spec that runs lm-eval's own task configs (prompts, metrics and "
                        "lm-eval's task code) on your local copies of the datasets: task NAME reads "
                        "DATA_DIR/NAME.jsonl, rows with the dataset's columns. `aaudit auditor preset list` shows "
                        "every preset with the columns its file must have; `aaudit auditor import-dataset` writes "
                        "such a file from a locally saved Hugging Face dataset.")
    p.add_argument("names", nargs="+", metavar="NAME", help="preset names (lm-eval task names), or `list`")
    p.add_argument("--data-dir", default="data", metavar="DIR",
                   help="folder of the data files inside the dataset bundle (default: data)")
    p.add_argument("--num-fewshot", type=int, metavar="N",
                   help="few-shot examples per question; MMLU then also reads DATA_DIR/NAME.dev.jsonl")
    p.add_argument("--seed", type=int, default=1234, help="the spec's seed (default: 1234)")
    p.add_argument("--output", default="aggregate", choices=("aggregate", "aggregate+samples"),
                   help="what leaves the enclave (default: aggregate)")
    p.add_argument("--name", default="preset-audit", help="the spec's name (default: preset-audit)")
    p.add_argument("--samples-recipient", metavar="KEY",
                   help="paper presets with --output aggregate+samples: the auditor's samples public key "
                   "(keys/auditor.samples.pub)")
    p.add_argument("--toxic-label", default="toxic",
                   help="paper_toxicchat: the classifier judge's name for the toxic class, from its config.json "
                   "id2label (default: toxic)")
    p.add_argument("--chat-template", action="store_true",
                   help="render every prompt with the model's own chat template (chat_template = true; for "
                   "instruction-tuned models such as Llama-3.1-8B-Instruct)")
    p.add_argument("--out", type=Path, metavar="SPEC.toml", help="write the spec here (default: standard output)")
    p.set_defaults(func=_preset)

    i = rsub.add_parser("import-dataset", help="turn a locally saved Hugging Face dataset into a bundle JSONL file",
                        description="Read a locally saved Hugging Face dataset (a save_to_disk folder, a .parquet or "
                        ".arrow file, or a folder of them), offline, check that it has the columns the preset reads "
                        "(or the --columns you name), and write it as the JSONL file the spec reads: one RFC 8785 "
                        "JSON object per line, only those columns unless --all-columns. Writes nothing but --out "
                        "(mode 0600; it must not exist yet).")
    i.add_argument("source", type=Path, metavar="SOURCE", help="save_to_disk folder, .parquet or .arrow file, or a "
                   "folder of .parquet / .arrow files")
    what = i.add_mutually_exclusive_group(required=True)
    what.add_argument("--preset", metavar="NAME", help="the preset whose columns to check (`aaudit auditor preset list`)")
    what.add_argument("--columns", metavar="COL,COL", help="check these columns instead (a spec of your own)")
    i.add_argument("--split", metavar="SPLIT", help="which split of a save_to_disk DatasetDict (e.g. test)")
    i.add_argument("--all-columns", action="store_true", help="write every column, not only the checked ones")
    i.add_argument("--sample", type=int, metavar="N",
                   help="write N rows drawn without replacement with a seeded generator, in their original order "
                   "(the paper's MMLU audit: 500)")
    i.add_argument("--seed", type=int, default=1234, help="the seed of --sample (default: 1234)")
    i.add_argument("--out", type=Path, required=True, metavar="FILE.jsonl",
                   help="the file to write, e.g. data/NAME.jsonl of your dataset bundle")
    i.set_defaults(func=_import_dataset)


def _preset(args: argparse.Namespace) -> int:
    from benchmarks.paper_presets import paper_spec
    from benchmarks.presets import paper_preset_names, preset_infos, preset_spec

    if args.names == ["list"]:
        text = "".join(f"{i.name}\n    {i.summary}\n    " + "; ".join(f"{f}: {', '.join(c)}" for f, c in i.columns.items())
                       + "".join(f"\n    judge {j.name} ({j.kind})" for j in i.judges) + "\n" for i in preset_infos())
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:  # `preset list | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return 0
    paper = [n for n in args.names if n in paper_preset_names()]
    if paper and len(paper) != len(args.names):
        raise UnusableInput(f"write the paper's presets ({', '.join(paper)}) and lm-eval's built-in ones in separate "
                            "specs (one session can run both, one job after the other)")
    if paper:
        if args.num_fewshot is not None:
            raise UnusableInput("--num-fewshot does not apply to the paper's presets (MMLU is 5-shot, as in the paper)")
        text = paper_spec(args.names, data_dir=args.data_dir, seed=args.seed, output=args.output,
                          samples_recipient=args.samples_recipient, toxic_label=args.toxic_label,
                          spec_name=args.name, chat_template=args.chat_template)
    else:
        if args.samples_recipient is not None:
            raise UnusableInput("--samples-recipient applies to the paper's presets only")
        text = preset_spec(args.names, data_dir=args.data_dir, num_fewshot=args.num_fewshot, seed=args.seed,
                           output=args.output, spec_name=args.name, chat_template=args.chat_template)
    infos = {i.name: i for i in preset_infos()}
    for name in args.names:
        for file, cols in infos[name].columns.items():
            print(f"{name} reads {args.data_dir}/{file} with columns {', '.join(cols)}", file=sys.stderr)
        for judge in infos[name].judges:
            print(f"{name} scores with judge {judge.name} ({judge.kind}): the folder {judge.name}/ of the judges "
                  "asset (`aaudit seal judges`)", file=sys.stderr)
    if args.out is None:
        sys.stdout.write(text)
    else:
        try:
            args.out.write_text(text)
        except OSError as exc:
            raise UnusableInput(f"cannot write {args.out}: {exc.strerror}") from None
        print(f"spec written to {args.out}", file=sys.stderr)
    return 0


def _import_dataset(args: argparse.Namespace) -> int:
    from benchmarks.import_dataset import load_rows, to_jsonl

    if args.preset is not None:
        from benchmarks.presets import preset_infos

        info = next((i for i in preset_infos() if i.name == args.preset), None)
        if info is None:
            raise UnusableInput(f"preset {args.preset!r} is unknown (`aaudit auditor preset list` shows them all)")
        columns, what = next(iter(info.columns.values())), f"preset {args.preset!r}"
    else:
        columns = tuple(c.strip() for c in args.columns.split(",") if c.strip())
        if not columns:
            raise UnusableInput("--columns needs at least one column name")
        what = "your spec"
    if args.out.exists():
        raise UnusableInput(f"{args.out} exists; remove it or choose another --out")
    rows = load_rows(args.source, args.split)
    if args.sample is not None:
        from benchmarks.paper_presets import sample_rows

        rows = sample_rows(rows, args.sample, seed=args.seed)
    data = to_jsonl(rows, columns, what, args.source, keep_all=args.all_columns)
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise UnusableInput(f"cannot create {args.out}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    print(f"{len(rows)} rows written to {args.out}", file=sys.stderr)
    return 0
