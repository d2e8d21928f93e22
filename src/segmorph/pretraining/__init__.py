"""Self-supervised pretraining on unlabelled scans: a masked-image (or denoising) autoencoder.

``segmorph pretrain IMAGES... --out PRE`` trains the U-Net that ``segmorph train`` would build for the same
images and time budget (its heads predicting the input channels), or a classifier's convolutional body with a
light decoder, to reconstruct corrupted images; ``segmorph train --init PRE`` and ``segmorph classify train
--init PRE`` then start from those weights (:mod:`segmorph.nn.transfer`).

Modules: :mod:`~segmorph.pretraining.objectives` (corruptions, loss, score), :mod:`~segmorph.pretraining.task`
(the :class:`~segmorph.pretraining.task.ReconstructionTask` the training loop runs),
:mod:`~segmorph.pretraining.networks` (the networks), :mod:`~segmorph.pretraining.pictures`
(``reconstructions.png``), :mod:`~segmorph.pretraining.pipeline` (the run folder) and
:mod:`~segmorph.pretraining.api` (:func:`~segmorph.pretraining.api.pretrain`).
"""
