"""The denoising objective of `DiffusionModel`, shared by every backend's training step: the draws, the labels, the EMA.

Each function is the body of the `DiffusionModel` method of its name and
takes the model; the backend-specific steps are in `steps.py`.
"""

import keras
from keras import ops

from ddpm_keras.utils.distribute import num_replicas_in_sync

from ddpm_keras.training import labels as training_labels
from ddpm_keras.training import masks as training_masks


def drop_labels(model, labels, seed=None):
    """Classifier-free guidance's label dropout: each label becomes `null_label` with probability `cond_drop_prob`.

    The training step runs it on each batch's labels with the seed of
    its draws of `t` and the noise (`training_batch`).

    Args:
        labels: Int tensor `(batch,)` of classes in `[0, num_classes)`.
        seed: `None` (the model's training `SeedGenerator`), a
            `keras.random.SeedGenerator` or an integer. Defaults to
            `None`.

    Returns:
        An int32 tensor `(batch,)`.

    Example:

    >>> drop_labels(model, ops.convert_to_tensor([3, 1, 4, 1, 5]), seed=0)  # e.g. [3, 1, 10, 1, 5]
    """
    if model.num_classes is None:
        raise ValueError("drop_labels needs a class-conditional model. Received: an unconditional network")
    seed = model.seed_generator if seed is None else seed
    return training_labels.drop_labels(labels, model.null_label, model.cond_drop_prob, seed)


def network_inputs(model, inputs):
    """The full inputs of `model`'s network from what `DiffusionModel.call` was given.

    `[x_t, t]`, then an inpainting network's `masked_image` and `mask`
    (the all-zero mask when they are not given: nothing known, the free
    generation it also trains on), then a conditional network's labels
    (the null label when none are given). A tensor of images alone (how
    Keras builds a compiled loss) is taken at `t = 0`.
    """
    if not isinstance(inputs, (list, tuple)):
        inputs = [inputs, ops.zeros((ops.shape(inputs)[0],), dtype="int32")]
    inputs = list(inputs)
    if model.inpainting and len(inputs) in (2, 3):
        zeros = ops.zeros_like(inputs[0])
        inputs[2:2] = [zeros, zeros[..., :1]]
    first = 4 if model.inpainting else 2
    if len(inputs) not in (first, first + 1):
        expected = "[x_t, t, masked_image, mask" if model.inpainting else "[x_t, t"
        raise ValueError(f"inputs must be {expected}] or {expected}, labels]. Received: {len(inputs)} inputs")
    if len(inputs) == first + 1 and model.num_classes is None:
        raise training_labels.unconditional_error(inputs[-1])
    if len(inputs) == first and model.num_classes is not None:
        inputs.append(ops.full_like(ops.cast(inputs[1], "int32"), model.null_label))
    return inputs


def training_batch(model, images, seed, labels=None, training=True):
    """One batch of the denoising objective: `(inputs, target, weights)`.

    Draws `(x_t, t, eps)` with `noisy_batch`; `inputs` is `[x_t, t]`,
    or `[x_t, t, labels]` for a conditional model, the labels through
    `drop_labels` (drawn from `seed` after the noise and the masks) when
    `training` and as given otherwise. An inpainting model gets
    `[x_t, t, masked_image, mask(, labels)]`, one mask per image drawn
    from `seed` after the noise (`random_masks`), also in validation;
    `target` is
    `diffusion.prediction_target(images, eps, t, prediction_type)` and
    `weights` is `timestep_weights(t)` (`None` when unweighted), or
    for an inpainting model with `inpainting_loss="hole"` the weight of
    each pixel, `(batch, H, W, 1)`, 0 where known
    (`training.masks.hole_weights`). The
    training and validation steps of every backend take their loss
    from it: `compute_loss(y=target, y_pred=network(inputs),
    sample_weight=weights)`.

    Args:
        images: Float tensor `(batch, H, W, C)`, the clean images `x_0`.
        seed: A `keras.random.SeedGenerator` (or what `keras.random`
            takes as a seed), as in `noisy_batch`.
        labels: `None`, or for a conditional model an int tensor
            `(batch,)` of classes. Defaults to `None`.
        training: Boolean, drop labels (`cond_drop_prob`). Defaults to
            `True`.

    Returns:
        `(inputs, target, weights)`.
    """
    x_t, t, noise = noisy_batch(model, images, seed)
    target = model.diffusion.prediction_target(images, noise, t, model.prediction_type)
    inputs, weights = [x_t, t], model.timestep_weights(t)
    if model.inpainting:
        masks = random_masks(model, images, seed)
        inputs += [training_masks.masked_images(images, masks), ops.cast(masks, images.dtype)]
        if model.inpainting_loss == "hole":
            weights = training_masks.hole_weights(masks, weights)
    if labels is not None:
        inputs.append(drop_labels(model, labels, seed) if training else ops.cast(labels, "int32"))
    return inputs, target, weights

def random_masks(model, images, seed=None):
    """One random training mask per image, 1 where known: float32 `(batch, H, W, 1)` (`training.masks`).

    Args:
        images: Float tensor `(batch, H, W, C)`.
        seed: `None` (the model's training `SeedGenerator`), a
            `keras.random.SeedGenerator` or an integer. Defaults to `None`.

    Example:

    >>> masks = model.random_masks(images, seed=0)  # kinds at the rates model.mask_rates
    """
    seed = model.seed_generator if seed is None else seed
    height, width = model.image_shape[:2]
    return training_masks.random_masks(ops.shape(images)[0], height, width, model.mask_rates, seed)


def noisy_batch(model, images, seed):
    """Draws `t ~ U[0, T)` and `eps ~ N(0, I)`; returns `(x_t, t, eps)`."""
    batch = ops.shape(images)[0]
    t = keras.random.randint(
        (batch,), 0, model.diffusion.num_timesteps, dtype="int32", seed=seed
    )
    noise = keras.random.normal(ops.shape(images), dtype=images.dtype, seed=seed)
    return model.diffusion.q_sample(images, t, noise), t, noise


def ema_decay(model):
    """The decay of the EMA update that follows the optimizer's latest step.

    `ema`, or with `ema_warmup` `min(ema, (1 + n) / (10 + n))` where
    `n = optimizer.iterations` is the count of optimizer updates done
    (diffusers' `EMAModel` warm-up): `2 / 11` after the first update,
    `ema` from `n >= (10 ema - 1) / (1 - ema)` on (`n >= 8,991` for
    `ema = 0.999`).

    Returns:
        `ema` (a Python float), or with `ema_warmup` a float32 scalar
        tensor.
    """
    if not model.ema_warmup:
        return model.ema
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            "ema_warmup reads the optimizer's step count: compile the model first. Received: optimizer=None"
        )
    n = ops.cast(model.optimizer.iterations, "float32")
    return ops.minimum(model.ema, (1.0 + n) / (10.0 + n))

def update_ema(model, decay=None, assign=None):
    """Moves every EMA weight towards the network's: `decay * ema_w + (1 - decay) * w`.

    Args:
        decay: `None` (`ema_decay()`) or a float (or a scalar tensor)
            in `[0, 1]`. Defaults to `None`.
        assign: `None`, or a callable `assign(variable, update, source)`
            that writes `update(variable, source)` to `variable`: how the
            training step writes mirrored variables under a
            `tf.distribute` strategy (`steps._tf_update_ema`). Defaults
            to `None`: `variable.assign(update(variable, source))`.
    """
    decay = ema_decay(model) if decay is None else decay
    assign = assign_variable if assign is None else assign

    def moved(ema_weight, weight):
        return decay * ema_weight + (1.0 - decay) * ops.cast(weight, ema_weight.dtype)

    for weight, ema_weight in zip(model.network.weights, model.ema_network.weights):
        assign(ema_weight, moved, weight)


def assign_variable(variable, update, source):
    """`variable.assign(update(variable, source))`: `update_ema`'s write outside a strategy's merge."""
    variable.assign(update(variable, source))


def freeze(model):
    """Makes every layer and variable of `model` non-trainable.

    Setting `model.trainable = False` alone can leave sublayers trainable
    (on TensorFlow the flag is not propagated when it is already False, as
    after loading), and a trainable EMA weight would enter the optimizer.
    """
    model.trainable = False
    for layer in model._flatten_layers(include_self=True):
        layer.trainable = False
    for variable in model.weights:
        variable.trainable = False



def compute_loss(model, x=None, y=None, y_pred=None, sample_weight=None, training=True):
    """The loss between the training target and the network's output, each example weighted.

    Prediction and target are cast to float32 first (mixed precision).
    With no compiled loss: `mean_i(w_i * mean_pixels((y_i - y_pred_i)^2))`
    (`w_i = 1` without `sample_weight`), or with a weight per pixel the
    mean of weight times squared error over every pixel and channel,
    plus the layers' added losses. With a compiled Keras loss: that loss,
    given `sample_weight` reshaped to `(batch, 1, 1, 1)` (a weight per
    pixel as it is), which broadcasts against the values of a loss per
    pixel (every built-in regression loss: MSE, MAE, Huber, ...).
    Under a `tf.distribute` strategy both are this replica's share of
    the global mean, as Keras's compiled losses are.

    Args:
        x: Unused.
        y: The target, `diffusion.prediction_target(...)`; in Keras's
            symbolic build `None` or the data's labels (zeros are used).
        y_pred: The network's output.
        sample_weight: `None`, a float tensor `(batch,)`, the weight of
            each example, or `(batch, H, W, 1)`, the weight of each pixel
            (see `training_batch`).
        training: Boolean.

    Returns:
        A float32 scalar tensor.
    """
    if y is None or len(y.shape) != len(y_pred.shape):
        # Keras's symbolic build of a compiled loss passes the data's y:
        # none, or a conditional model's labels. The target of the
        # denoising loss is shaped as y_pred.
        y = ops.zeros_like(y_pred)
    y, y_pred = ops.cast(y, "float32"), ops.cast(y_pred, "float32")
    per_pixel = sample_weight is not None and len(sample_weight.shape) > 1
    if model.loss is None:
        if per_pixel:
            loss = ops.mean(ops.cast(sample_weight, "float32") * ops.square(y - y_pred))
        else:
            per_example = ops.mean(ops.square(y - y_pred), axis=tuple(range(1, len(y_pred.shape))))
            if sample_weight is not None:
                per_example = per_example * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            loss = ops.mean(per_example)
        for extra in model.losses:
            loss = loss + ops.cast(ops.sum(extra), "float32")
        # As Keras's compiled losses: this replica's share of the global
        # mean under a tf.distribute strategy (the gradients are summed).
        return loss / float(num_replicas_in_sync())
    check_compiled_loss(model.loss)
    if sample_weight is not None and not per_pixel:
        # A (batch,) weight would broadcast against the last axis of the per-pixel values.
        sample_weight = ops.reshape(
            ops.cast(sample_weight, "float32"), (-1,) + (1,) * (len(y_pred.shape) - 1)
        )
    return keras.Model.compute_loss(
        model, x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
    )


def timestep_weights(model, t):
    """The loss weight of each example from its timestep, or `None` without `loss_weighting`.

    Args:
        t: Int tensor `(batch,)` of timesteps in `[0, T)`.

    Returns:
        `None`, or a float32 tensor `(batch,)`: the float64 table of
        `objectives.timestep_weights` (rounded to float32, kept by the
        model) gathered at `t`.

    Example:

    >>> model = DiffusionModel(network, diffusion, prediction_type="v", loss_weighting="min_snr")
    >>> model.timestep_weights(ops.convert_to_tensor([0, 999]))
    """
    if model._timestep_weights is None:
        return None
    return ops.take(ops.convert_to_tensor(model._timestep_weights), ops.cast(t, "int32"), axis=0)


def check_compiled_loss(loss):
    """Raises a `ValueError` for a compiled loss object that does not reduce to a scalar."""
    reduction = getattr(loss, "reduction", "sum_over_batch_size")
    if isinstance(loss, keras.losses.Loss) and reduction in (None, "none"):
        name = type(loss).__name__
        raise ValueError(
            f"DiffusionModel needs a compiled loss that reduces to a scalar, not one value per element: "
            f"compile with the default reduction='sum_over_batch_size' (per-example weights come from "
            f"loss_weighting). Received: loss={name}(reduction={reduction!r})"
        )


def check_same_structure(network, ema_network):
    shapes = [tuple(w.shape) for w in network.weights]
    ema_shapes = [tuple(w.shape) for w in ema_network.weights]
    if shapes != ema_shapes:
        raise ValueError(
            "ema_network must have the same weights as network, in the same "
            f"order. Received: {len(ema_shapes)} weights for {len(shapes)}, "
            "or shapes that differ."
        )
