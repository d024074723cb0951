"""Every config field, with its meaning. Other configs import this and override.

Values are plain Python (str, int, float, bool, tuples) so the resolved config
serialises into the workdir as ``config.json``.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.name = ''  # label of the run in tables and plots ('' = derived from the method)
  c.seed = 0  # parameter init, epoch permutations, attack random starts

  c.data = ml_collections.ConfigDict()
  c.data.name = 'mnist'  # 'mnist' (packaged, offline), 'cifar10', 'cifar100' (tfds)
  c.data.data_dir = ''  # tfds data_dir for CIFAR ('' = tfds default ~/tensorflow_datasets)
  c.data.augment = False  # random crop (4-pixel zero padding) + horizontal flip
  c.data.train_size = 0  # use only the first N training examples (0 = all)
  c.data.test_size = 0  # use only the first N test examples (0 = all)
  c.data.noise = ml_collections.ConfigDict()
  c.data.noise.kind = 'none'  # label noise: 'none', 'symmetric', 'asymmetric'
  c.data.noise.rate = 0.0  # symmetric: resample prob. over all K classes; asym.: flip prob.
  c.data.noise.seed = 0  # the noisy labels are a function of this seed alone

  c.model = ml_collections.ConfigDict()
  # Presets: small_cnn, resnet18, resnet34, resnet50, preact_resnet18, wrn34_10. Generic
  # architectures taking model.depth: resnet, resnet_bottleneck, preact_resnet, wide_resnet.
  c.model.name = 'small_cnn'
  c.model.width = 0  # width override (0 = the architecture's own); tests use tiny widths
  c.model.depth = ()  # generic names: blocks per stage, or (total_depth,) for wide_resnet; a
  # preset accepts only its own depth (() = the architecture's own), see models.create_model
  c.model.dense = 0  # small_cnn: hidden dense units (0 = its own, 128)
  c.model.features = ()  # small_cnn: conv widths, e.g. (64, 64) (() = its own, (32, 64))
  c.model.batch_norm = True  # small_cnn: BatchNorm after each conv (False: none; convs get biases)
  c.model.compute_dtype = 'float32'  # training convs/matmuls: 'float32' or 'bfloat16' (eval: float32)

  c.objective = ml_collections.ConfigDict()
  c.objective.name = 'at'  # 'at' (PGD-AT), 'ls' (AT + label smoothing), 'trades', 'te', 'kd'
  c.objective.beta = 6.0  # TRADES: weight of the KL robustness term
  c.objective.ls_eps = 0.1  # LS: smoothing mass spread uniformly over the K classes
  c.objective.te_weight = 30.0  # TE: weight of the consistency term after ramp-up
  c.objective.te_momentum = 0.9  # TE: EMA momentum of the per-example prediction ensemble
  c.objective.te_rampup_epochs = 0  # TE: sigmoid ramp-up of the weight (0 = none)
  c.objective.awp_gamma = 0.0  # AWP: weight perturbation / weight norm, per layer (0 = no AWP)
  c.objective.awp_warmup_epochs = 0  # AWP: plain steps before this 0-based epoch
  c.objective.teacher_workdir = ''  # KD: workdir of the robust teacher (its best checkpoint)
  c.objective.std_teacher_workdir = ''  # KD: workdir of a standard teacher, final ('' = none)
  c.objective.kd_temperature = 2.0  # KD: temperature T of the distillation terms
  c.objective.kd_ce_weight = 0.3  # KD: weight of the CE on the label
  c.objective.kd_weight = 0.6  # KD: weight of the robust teacher's term
  c.objective.kd_std_weight = 0.1  # KD: weight of the standard teacher's term

  c.sglr = ml_collections.ConfigDict()
  c.sglr.enabled = False  # Self-Guided Label Refinement on top of the objective
  c.sglr.momentum = 0.9  # m: EMA momentum of the soft-label table (Eq. 8)
  c.sglr.lam = 0.8  # weight of the adversarial prediction in p (Eq. 7); 1 - lam on clean
  c.sglr.temperature = 1.0  # T: temperature of the label softmax (Tab. 4)
  c.sglr.alpha = 1.0  # smoothing level: target = (1 - alpha) hard + alpha * table row
  c.sglr.start_epoch = 0  # warm-up epochs of plain training; refinement from this 0-based epoch
  c.sglr.table_sharding = 'replicated'  # label table layout: 'replicated' or 'sharded' by rows

  c.attack = ml_collections.ConfigDict()  # the training attack (Linf PGD, random start)
  c.attack.eps = 8 / 255  # Linf radius, in [0, 1] pixel units
  c.attack.step_size = 2 / 255  # PGD step
  c.attack.steps = 10  # PGD iterations
  c.attack.norm = 'Linf'  # threat model: 'Linf' (sign steps) or 'L2' (normalised-gradient steps)

  c.eval = ml_collections.ConfigDict()  # test evaluation (every epoch and --mode=eval)
  c.eval.eps = 8 / 255  # radius of the test attacks (in eval.norm)
  c.eval.norm = 'Linf'  # threat model of PGD-20, AutoAttack and transfer: 'Linf' or 'L2'
  c.eval.step_size = 2 / 255  # PGD-20 step
  c.eval.steps = 20  # PGD steps of the per-epoch robust accuracy (PGD-20)
  c.eval.batch_size = 500  # evaluation batch (padded, masked)
  c.eval.every_epochs = 1  # test natural / PGD-20 accuracy every N epochs
  c.eval.seed = 0  # attack random starts at evaluation
  c.eval.num_examples = 0  # --mode=eval: first N test points (0 = all)
  c.eval.suite = ('natural', 'pgd20')  # --mode=eval: metrics to compute
  c.eval.autoattack_examples = 1000  # AutoAttack on the first N test points
  c.eval.autoattack_budget = 'standard'  # 'standard' (the reference's) or 'smoke' (tests only)
  c.eval.autoattack_version = 'standard'  # 'standard' or 'rand' (EOT, randomised models)
  c.eval.precision = 'float32'  # matmul/conv precision of every test attack ('default' = platform's)
  c.eval.transfer_from = ''  # workdir of the source model for the transfer attack

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 200  # training epochs
  c.train.batch_size = 128  # global batch size (split over devices and processes)
  c.train.halt_after_epoch = 0  # stop (checkpointed, resumable) after this epoch (0 = never)
  c.train.checkpoint_every_steps = 0  # also save latest every N steps inside an epoch (0 = epoch ends and SIGTERM only)
  c.train.train_fit_every_epochs = 1  # clean-label / noisy-label fit on the train set (0 = never)
  c.train.swa_start_epoch = -1  # SWA: first 0-based epoch whose weights are averaged (-1 = no SWA)
  c.train.swa_every_steps = 0  # SWA: optimizer steps between snapshots (0 = every epoch end)
  c.train.checkpoint_commit = 'auto'  # Orbax commit: 'rename', 'commit_file', 'auto' (commit_file on gs:// and FUSE)
  c.train.analysis_every_epochs = 0  # IIW and Hessian trace of the training loss every N epochs (0 = never)
  c.train.analysis_examples = 512  # the first N training examples those two are measured on
  c.train.hessian_probes = 4  # Rademacher probes of the per-epoch Hutchinson trace

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 0.1  # base learning rate
  c.optim.momentum = 0.9  # SGD momentum
  c.optim.nesterov = False  # Nesterov momentum
  c.optim.weight_decay = 5e-4  # coupled (PyTorch-style) L2 weight decay

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = 'piecewise'  # 'piecewise' or 'cosine'
  c.schedule.decay_epochs = (100, 150)  # piecewise: epochs after which lr *= decay_factor
  c.schedule.decay_factor = 0.1  # piecewise: multiplicative decay

  c.parallel = ml_collections.ConfigDict()
  c.parallel.num_devices = 0  # devices in the ('data',) mesh (0 = all)
  c.parallel.cpu_convs = 'auto'  # XLA:CPU convolutions: 'auto', 'ynnpack', 'xla' (host_devices)
  c.parallel.compilation_cache_dir = ''  # '' = user cache dir, 'none' = off, or a path

  c.distributed = ml_collections.ConfigDict()  # multi-host, jax.distributed
  c.distributed.enabled = 'auto'  # 'auto' (env/config says), 'true', 'false'
  c.distributed.coordinator_address = ''  # host:port of process 0 ('' = from env/cluster)
  c.distributed.num_processes = 0  # 0 = from env/cluster
  c.distributed.process_id = -1  # -1 = from env/cluster
  c.distributed.local_device_ids = ''  # e.g. '0,1' ('' = all local devices)
  return c
