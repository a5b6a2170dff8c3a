"""Issue 19, item 11: `dlrun report` on a crafted sweep directory writes only inside DIR/report/,
prints commands a shell runs as dlrun and nothing else, and never writes through a symlink."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from dlrun.cli import main as cli_main


def crafted_sweep(folder: Path, trials: list[list[str]], space: dict | None = None) -> Path:
    """A sweep directory as a hostile colleague could hand it over: any overrides, trial i scoring i."""
    for i, overrides in enumerate(trials):
        (folder / str(i) / ".hydra").mkdir(parents=True)
        (folder / str(i) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (folder / str(i) / "summary.json").write_text(json.dumps(
            {"status": "finished", "best": {"monitor": "val/acc", "value": i / 10}, "epochs": 1, "wall_s": 1.0}))
    if space is not None:
        (folder / "multirun.yaml").write_text(yaml.safe_dump({"sweep": {"space": space}}))
    return folder


def report(capsys, folder: Path, *args: str) -> tuple[int, str, list[str]]:
    """dlrun report in this process: (exit status, stdout, stderr's lines)."""
    try:
        cli_main(["report", str(folder), *args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_override_keys_that_are_paths_put_no_plot_outside_the_report_folder(tmp_path, capsys):
    outside = tmp_path / "a" / "x"
    outside.mkdir(parents=True)
    (tmp_path / "abs").mkdir()
    keys = ["../../x/NAME", f"{tmp_path}/abs/NAME", "k" * 300, "a/b", "a_b"]  # the last two read alike
    folder = crafted_sweep(tmp_path / "a" / "sw", [[f"{key}={i + 1}" for key in keys] for i in range(3)])
    before = files(tmp_path)
    code, out, err = report(capsys, folder)
    assert code == 0, err
    written = files(tmp_path) - before
    assert written and all(p.parent == folder / "report" for p in written), sorted(written)
    assert not (outside / "NAME.png").exists() and not (tmp_path / "abs" / "NAME.png").exists()
    names = sorted(p.name for p in written)
    assert len(names) == 5 and all(n.endswith(".png") and not n.startswith(".") and len(n) < 120 for n in names)
    assert {"a_b.png", "a_b-2.png", "x_NAME.png"} <= set(names), names
    assert sorted(line.split("/")[-1] for line in out.splitlines() if line.startswith("plot: ")) == names


def test_the_printed_command_is_shell_quoted_and_runs_nothing_but_dlrun(tmp_path, capsys):
    marker, marker2 = tmp_path / "pwned", tmp_path / "pwned2"
    weird = f"x'; touch {marker} #"  # a log-space key: its narrower range is printed as a command too
    best = [f"optim.lr=0.1; touch {marker} #", f"optim.weight_decay=$(touch {marker2})",
            "logger.name=[/oops] :smile:", f"{weird}=0.02"]
    space = {"optim": {"lr": "loguniform(1e-5,1e-1)"}, weird: "loguniform(1e-3,1e-1)"}
    first = ["optim.lr=0.01", "optim.weight_decay=0", "logger.name=a", f"{weird}=0.01"]
    folder = crafted_sweep(tmp_path / "sw", [first, best], space)
    code, out, err = report(capsys, folder)
    assert code == 0, err
    lines = out.splitlines()
    line = lines[lines.index(next(l for l in lines if l.endswith("run it again with:"))) + 1].strip()
    assert shlex.split(line) == ["dlrun", "train", *best]  # the overrides back, byte for byte
    assert "[/oops] :smile:" in out  # a value is printed as it is: no rich markup, no emoji
    ranges = [l.split(": ", 1)[1] for l in lines if l.startswith("narrower range from the top")]
    assert len(ranges) == 2 and all(len(shlex.split(r)) == 1 and shlex.split(r)[0].startswith("sweep.space.") for r in ranges)
    # pasted into a shell, each line runs dlrun (here a function that does nothing) and nothing else
    for pasted in (line, *(f"dlrun train -m sweep=random {r}" for r in ranges)):
        subprocess.run(["bash", "-c", f"dlrun() {{ :; }}; {pasted}"], check=True, timeout=60)
    assert not marker.exists() and not marker2.exists()


def test_a_report_folder_that_is_a_symlink_is_refused_and_nothing_written_through_it(tmp_path, capsys):
    folder = crafted_sweep(tmp_path / "sw", [["optim.lr=0.1"], ["optim.lr=0.2"]])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "report").symlink_to(elsewhere)
    code, out, err = report(capsys, folder)
    assert code == 2 and len(err) == 1 and out == "", (out, err)
    assert err[0].startswith(f"dlrun report: error: {folder / 'report'} is a symlink;")
    assert list(elsewhere.iterdir()) == [] and (folder / "report").is_symlink()


def test_a_symlink_where_a_plot_goes_is_replaced_not_followed(tmp_path, capsys):
    folder = crafted_sweep(tmp_path / "sw", [["optim.lr=0.1"], ["optim.lr=0.2"]])
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (folder / "report").mkdir()
    (folder / "report" / "optim.lr.png").symlink_to(victim)
    (folder / "report" / f".optim.lr.png.{__import__('os').getpid()}.tmp").symlink_to(victim)  # a planted temp name
    code, out, err = report(capsys, folder)
    assert code == 0, err
    assert victim.read_bytes() == b"precious"
    plot = folder / "report" / "optim.lr.png"
    assert not plot.is_symlink() and plot.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (folder / "report").iterdir()) == ["optim.lr.png"]


@pytest.mark.parametrize("damage", ["overrides not strings", "overrides not YAML", "summary a list",
                                    "metric a string", "best a string", "epochs text"])
def test_a_damaged_trial_is_shown_without_a_traceback(tmp_path, capsys, damage):
    folder = crafted_sweep(tmp_path / "sw", [["optim.lr=0.1"], ["optim.lr=0.2"], ["optim.lr=0.3"]])
    summary = {"status": "finished", "best": {"monitor": "val/acc", "value": 0.5}, "epochs": 1, "wall_s": 1.0}
    hydra, target = folder / "1" / ".hydra" / "overrides.yaml", folder / "1" / "summary.json"
    if damage == "overrides not strings":
        hydra.write_text("- 1\n- {optim.lr: 0.1}\n")
    elif damage == "overrides not YAML":
        hydra.write_bytes(b"- [unclosed\n\xff")
    elif damage == "summary a list":
        target.write_text("[1, 2]")
    elif damage == "metric a string":
        target.write_text(json.dumps({**summary, "best": {"monitor": "val/acc", "value": "high"}}))
    elif damage == "best a string":
        target.write_text(json.dumps({**summary, "best": "trial 1"}))
    else:
        target.write_text(json.dumps({**summary, "epochs": "ten", "wall_s": [1]}))
    code, out, err = report(capsys, folder)
    assert code == 0 and err == [], err
    best = (1, 0.5) if damage == "epochs text" else (2, 0.2)  # a trial without a metric never outranks one with
    assert f"best: trial {best[0]}, val/acc {best[1]:.4f}" in out
    code, out, err = report(capsys, folder, "--json")
    trials = json.loads(out)["trials"]
    assert code == 0 and trials[0]["trial"] == best[0] and sorted(t["trial"] for t in trials) == [0, 1, 2]


def test_a_key_with_tex_in_it_and_a_read_only_sweep_are_one_line_or_a_plot(tmp_path, capsys):
    import os

    folder = crafted_sweep(tmp_path / "sw", [[r"a.$\frac{$=1"], [r"a.$\frac{$=2"]])
    code, out, err = report(capsys, folder)
    assert code == 0 and err == [] and len(list((folder / "report").glob("*.png"))) == 1, err
    if os.geteuid() == 0:
        return  # root writes anywhere: the read-only case needs a user
    other = crafted_sweep(tmp_path / "ro", [["optim.lr=0.1"], ["optim.lr=0.2"]])
    other.chmod(0o555)
    try:
        code, out, err = report(capsys, other)
    finally:
        other.chmod(0o755)
    assert code == 2 and len(err) == 1 and "could not make" in err[0] and out == "", err
