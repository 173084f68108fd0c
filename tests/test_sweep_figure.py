"""A sweep's summary.png says which settings have no finished run (every seed failed or diverged), instead of
leaving their column silently empty; and what its runs cost, with every commit they ran at."""
import pandas as pd

from basinlab.sweep import summary


def test_a_setting_without_a_finished_run_is_marked_in_the_figure(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(summary, "save_png", lambda fig, path: drawn.setdefault("fig", fig) and path)
    runs = pd.DataFrame({"setting": ["batch", "batch", "online"], "final_val_acc1": [69.1, 69.3, 65.7]})
    summary.plot(runs, ["batch", "none", "online"], tmp_path / "summary.png")
    texts = [(t.get_text(), t.get_position()[0]) for t in drawn["fig"].axes[0].texts]
    assert texts == [("no finished run\n(failed or diverged)", 1)]


def test_a_runs_cost_names_the_commit_it_started_at_and_each_resumes(tmp_path):
    """run_cost (the run time and commits an experiment's README quotes) reads the start's commit and every
    resume's from env.yaml: a run resumed at a later commit brings that commit into the provenance."""
    import yaml
    times = "epoch,epoch_time_s,val_time_s\n1,30.0,10.0\n2,60.0,20.0\n"
    starts = {"a": ("1" * 40, ["2" * 40, "3" * 40]), "b": ("1" * 40, [])}
    for name, (commit, resumed) in starts.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.csv").write_text(times)
        env = {"git_commit": commit, "resumes": [{"git_commit": c} for c in resumed] + ["damaged"]}
        (tmp_path / name / "env.yaml").write_text(yaml.safe_dump(env))
    spent = summary.run_cost(tmp_path, pd.DataFrame({"run": ["a", "b"]}))
    assert spent == {"runs": 2, "minutes": 4.0, "commits": ["1111111", "2222222", "3333333"]}
