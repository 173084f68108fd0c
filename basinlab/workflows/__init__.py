"""Programs that run several trainings, each built by `basinlab.api.build_run` like any `basinlab train`:

    lr_range.py    the LR range test (`basinlab lr-range`): one set-up run whose steps sweep the lr
    autohyper.py   autoHyper (`basinlab autohyper train`): the lr search's trials, then the full trainings

Their pure parts (the search rule, the LR range test's algorithm, the seed's config) are basinlab.tuning.
"""
