"""Stage `data@<task>`: load the task's local file, split it deterministically, tokenise every split.

Tokenises with the teacher's tokenizer so that no teacher-side stage depends on the student; the
student-side stages check that the student's vocabulary is the same. An evaluation-only task (sizes
only for `evaluation`) gets its other splits written empty, and its metrics say it is evaluation-only.
"""

import argparse
from pathlib import Path

from semalign.config import params_section, read_section
from semalign.data import DataConfig, encode, save_split, split_items
from semalign.files import write_json
from semalign.models import load_tokenizer
from semalign.tasks import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--tokenizer", type=Path, required=True, help="model directory of the tokenizer")
    parser.add_argument("--out", type=Path, required=True, help="the task's folder of splits")
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    # only this task's entry: data@<task> tracks data.tasks.<task>, not the other tasks
    tasks = {args.task: params_section(f"data.tasks.{args.task}")}
    config = read_section(DataConfig, "data", drop=("tasks",), tasks=tasks)
    sizes = config.tasks[args.task]

    loaded = load_task(args.task, sizes.path)
    splits = split_items(loaded.items, sizes, config.seed)
    tokenizer = load_tokenizer(args.tokenizer)
    summaries = {
        name: save_split(
            args.out, name, encode(items, tokenizer, config.max_length, config.chat_template), items
        )
        for name, items in splits.items()
    }
    write_json(
        args.metrics,
        {
            "source": str(loaded.source),
            "items": len(loaded.items),
            "skipped": loaded.skipped,
            "evaluation_only": sizes.evaluation_only,
            "splits": summaries,
        },
    )
    print(
        f"data {args.task}{' (evaluation only)' if sizes.evaluation_only else ''}: "
        + ", ".join(f"{name} {s['examples']}" for name, s in summaries.items())
    )


if __name__ == "__main__":
    main()
