"""Measurements behind the paper's analyses (its Fig. 1b, 5, B.3, B.7), each a pure
function of a model's weights, data and logits, so a study can take them per epoch or
per checkpoint:

  information  information in weights (PAC-Bayes IB estimate) and the gradient norm
  hessian      Hutchinson's estimate of the Hessian trace of the training loss
  confidence   the predicted probability of the labelled class, and its density
  embedding    penultimate-layer features, a 2-D t-SNE picture and its class separation
"""
