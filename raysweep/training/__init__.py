"""What the methods share for training networks, one job per module:

  stack.py       M members held as stacked parameters, run as one model (batched.py or vmap)
  loop.py        the minibatch training loops (a stack of members, or one network)
  optim.py       the optimizer factory: methods choose an optimizer by name
  likelihood.py  per-member losses, the Gaussian head, outputs -> predictive distributions
  budget.py      epochs and steps per cell, divergence checks
  samples.py     posteriors held as S flat parameter vectors
  sgmcmc.py      the SG-MCMC potential, its gradient noise estimate, independent minibatches
  kfac.py        Kronecker-factored curvature of trainable linear maps, its eigenbasis, draws and log-det
  deepspeed_members.py  large ensemble members trained one by one with DeepSpeed ZeRO
"""
