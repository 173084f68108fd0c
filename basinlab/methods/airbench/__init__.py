"""airbench's training tricks (--lookahead-every, --whiten-bias-epochs) and the airbench94 preset: the callbacks
in lookahead.py and whitening.py, configure in method.py, the preset in presets.py. The network is a model,
basinlab/models/airbench.py."""
