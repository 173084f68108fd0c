"""The words options accept, defined once: basinlab.config's choices and the modules that act on them (norm
layers, the parameter server, the noise models, precision, ...) import them from here, so the two never drift."""

LIMIT_MODES = ("stratified", "first")            # data/subsets.py
WD_FILTERS = ("all", "weights")                  # optim/weight_decay.py
NORM_MODES = ("batch", "group", "layer", "instance", "online", "none",   # nn/norms.py
              "frn", "evonorm_s0", "evonorm_b0", "gn_ws", "batchrenorm")
ECM_MODES = ("ls", "ac", "none")                 # nn/online_norm.py
SERVER_MODES = ("ssgd", "asgd", "msgd")          # methods/asgd/server.py
WORKER_ORDERS = ("round_robin", "random", "normal")                       # methods/asgd/schedule.py
WORKER_LOSS_POLICIES = ("continue", "stop")      # methods/asgd/real/server.py
NOISE_TYPES = ("uniform", "normal")              # methods/flat/noise.py
NOISE_SCALES = ("none", "weight", "filter")      # methods/flat/noise.py (filter: AdaSmoothOut)
STRENGTH_SCHEDULES = ("constant", "anneal", "tanh")                       # methods/flat/smoothout.py
ASAM_SCOPES = ("weights", "all")                 # methods/flat/sam.py
SAM_PERTURBATIONS = ("local", "global")          # methods/flat/sam.py
LR_SCALINGS = ("sqrt", "linear")                 # methods/flat/chunks.py
HESSIAN_MODES = ("train", "eval")                # metrics/hessian.py
AMP_MODES = ("none", "bf16", "fp16", "auto")     # engine/precision.py
EVAL_AMP_MODES = ("same", "none")                # engine/precision.py
CHANNELS_LAST_MODES = ("auto", "on", "off")      # engine/setup.py
NAN_POLICIES = ("stop", "skip")                  # engine/trainer.py
SPLITS = ("train", "val")                        # what evaluate, sharpness and landscape measure
CHECKPOINTS = ("best", "last")                   # which checkpoint of a run folder
LOSSES = ("cross-entropy", "mse")                # nn/losses.py
