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
    """run_cost (the run time and commits an experiment's README quotes) reads a branch's origin's commits, the
    start's and every resume's from env.yaml: a run resumed at a later commit brings that commit in."""
    import yaml
    times = "epoch,epoch_time_s,val_time_s\n1,30.0,10.0\n2,60.0,20.0\n"
    envs = {"a": {"git_commit": "1" * 40, "resumes": [{"git_commit": "2" * 40}, {"git_commit": "3" * 40}, "x"]},
            "b": {"git_commit": "1" * 40, "branched_from_commits": ["0" * 40]},
            "c": {"resumes": [{"started": "2026-12-07T10:00:00"}]}}   # outside git: no commit, left out
    for name, env in envs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.csv").write_text(times)
        (tmp_path / name / "env.yaml").write_text(yaml.safe_dump(env))
    spent = summary.run_cost(tmp_path, pd.DataFrame({"run": list(envs)}))
    assert spent == {"runs": 3, "minutes": 6.0, "commits": ["0000000", "1111111", "2222222", "3333333"]}
