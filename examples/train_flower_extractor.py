"""The recipe of the shipped flower feature extractor (`ddpm_keras.metrics.flower_features`).

Usage: python examples/train_flower_extractor.py [--out ddpm_keras/pretrained/flower_features.keras]
       [--images 16384] [--epochs 8] [--seed 100]

Draws synthetic flowers at 16 and 32 px (all resized to 32, as the model
does), a third of them clean, a sixth with petal counts the data never has,
the rest with one fault each (white noise, blotchy grain, blur, a colour
cast, at severities drawn log-uniformly). A small CNN learns three things
from its 128 features: the petal count (2 to 12), the drawing parameters
(radius, centre, petal, background and disc colours; under a colour cast,
the cast colours) and the fault. Then prints, for held-out images, the
Frechet distance to 4,096 real flowers of: 1,000 other real flowers (the
floor), and each fault at two strengths; each fault must stand well above
the floor. Writes the model up to its `features` layer (the heads only
train it).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ddpm_keras.data import synthetic_flowers  # noqa: E402
from ddpm_keras.data.degrade import WRONG_PETAL_COUNTS  # noqa: E402
from ddpm_keras.data.degrade import degrade  # noqa: E402
from ddpm_keras.data.degrade import shift_colours  # noqa: E402
from ddpm_keras.data.degrade import wrong_petal_flowers  # noqa: E402
from ddpm_keras.metrics import flower_features  # noqa: E402
from ddpm_keras.metrics import frechet_distance  # noqa: E402
from ddpm_keras.metrics import extract_features  # noqa: E402
from ddpm_keras.metrics.flowers import FLOWER_FEATURES_PATH  # noqa: E402
from ddpm_keras.metrics.flowers import FLOWER_FEATURES_SIZE  # noqa: E402
from ddpm_keras.utils.files import check_output  # noqa: E402

FAULTS = ("clean", "noise", "grain", "blur", "colour")
SEVERITY = {"noise": (0.02, 0.4), "grain": (0.02, 0.4), "blur": (0.3, 1.5), "colour": (0.03, 0.3)}
COLOURS = ("petal_colour", "background", "disc_colour")
SHAPE = ("radius", "centre_x", "centre_y")
MIN_PETALS, MAX_PETALS = 2, 12


def to_size(images):
    return keras.ops.convert_to_numpy(keras.ops.image.resize(images, (FLOWER_FEATURES_SIZE,) * 2,
                                                              interpolation="bilinear"))


def training_set(num_images, seed):
    """Images at 32 px, and their targets: petal count class, regressed parameters, fault class."""
    rng = np.random.default_rng(seed)
    parts = []
    for part, size in enumerate((16, 32)):
        n = num_images // 2
        wrong = n // 6
        images, params = synthetic_flowers(n - wrong, size, seed=seed + part, return_params=True)
        odd, odd_params = wrong_petal_flowers(wrong, size, seed=seed + 10 + part, return_params=True)
        images = np.concatenate([images, odd])
        params = {k: np.concatenate([params[k], odd_params[k]]) for k in ("num_petals",) + COLOURS + SHAPE}
        fault = np.zeros(n, np.int64)
        faulty = rng.permutation(n - wrong)[: (n - wrong) * 3 // 5]  # 3/5 of the normal-petal flowers
        fault[faulty] = rng.integers(1, len(FAULTS), len(faulty))
        for kind in range(1, len(FAULTS)):
            chosen = np.flatnonzero(fault == kind)
            low, high = SEVERITY[FAULTS[kind]]
            for chunk in np.array_split(chosen, max(1, len(chosen) // 32)):
                severity = float(np.exp(rng.uniform(np.log(low), np.log(high))))
                if FAULTS[kind] == "colour":
                    gain = 1.0 + severity * rng.standard_normal((len(chunk), 3))
                    offset = severity * rng.standard_normal((len(chunk), 3))
                    images[chunk] = shift_colours(images[chunk], gain, offset)
                    for name in COLOURS:
                        params[name][chunk] = np.clip(params[name][chunk] * gain + offset, 0.0, 1.0)
                else:
                    images[chunk] = degrade(images[chunk], FAULTS[kind], severity, seed=int(rng.integers(1 << 30)))
        regressed = np.concatenate([np.asarray(params[k], np.float32).reshape(n, -1) for k in COLOURS + SHAPE], 1)
        parts.append((to_size(images), params["num_petals"] - MIN_PETALS, regressed, fault))
    images, petals, regressed, fault = (np.concatenate(p) for p in zip(*parts))
    order = rng.permutation(len(images))
    return images[order], petals[order], regressed[order], fault[order]


def build(num_regressed):
    inputs = keras.Input((None, None, 3), name="images")
    x = keras.layers.Resizing(FLOWER_FEATURES_SIZE, FLOWER_FEATURES_SIZE, interpolation="bilinear", name="resize")(inputs)
    for filters, stride in ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1)):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", activation="relu")(x)
    pooled = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(x), keras.layers.GlobalMaxPooling2D()(x)])
    features = keras.layers.Dense(128, name="features")(pooled)
    hidden = keras.layers.Activation("relu")(features)
    heads = [
        keras.layers.Dense(MAX_PETALS - MIN_PETALS + 1, activation="softmax", name="petals")(hidden),
        keras.layers.Dense(num_regressed, name="params")(hidden),
        keras.layers.Dense(len(FAULTS), activation="softmax", name="fault")(hidden),
    ]
    return keras.Model(inputs, heads, name="flower_extractor")


def separation_table(extractor, seed):
    """FD to 4,096 real flowers of held-out real, faulty and wrong-petal flowers, at 16 and 32 px."""
    rows = []
    for size in (16, 32):
        reference = extract_features(extractor, synthetic_flowers(4096, size, seed=seed + 1000))
        real = synthetic_flowers(1000, size, seed=seed + 2000)

        def fd(images):
            features = extract_features(extractor, images)
            return frechet_distance(features.mean(0), np.cov(features, rowvar=False),
                                    reference.mean(0), np.cov(reference, rowvar=False))

        rows.append((size, "real (the floor)", fd(real)))
        for kind, (low, high) in SEVERITY.items():
            for severity in (low * 2, high / 2):
                rows.append((size, f"{kind} {severity:.2g}", fd(degrade(real, kind, severity, seed=1))))
        rows.append((size, f"petal counts {WRONG_PETAL_COUNTS}", fd(wrong_petal_flowers(1000, size, seed=seed + 2000))))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=FLOWER_FEATURES_PATH)
    parser.add_argument("--images", type=int, default=16384)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--overwrite", action="store_true", help="replace --out even if ddpm_keras did not write it")
    args = parser.parse_args()
    check_output(args.out, "--out", overwrite=args.overwrite or args.out == FLOWER_FEATURES_PATH)  # before the work
    keras.utils.set_random_seed(args.seed)
    images, petals, regressed, fault = training_set(args.images + 2048, args.seed)
    train, test = slice(0, args.images), slice(args.images, None)
    model = build(regressed.shape[1])
    model.compile(keras.optimizers.Adam(1e-3), loss=["sparse_categorical_crossentropy", "mse",
                                                     "sparse_categorical_crossentropy"],
                  loss_weights=[1.0, 10.0, 1.0], metrics=[["accuracy"], [], ["accuracy"]])
    model.fit(images[train], [petals[train], regressed[train], fault[train]], batch_size=64, epochs=args.epochs,
              verbose=2)
    results = model.evaluate(images[test], [petals[test], regressed[test], fault[test]], verbose=0, return_dict=True)
    print("held-out:", {k: round(float(v), 4) for k, v in results.items()})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    partial = args.out + ".partial.keras"
    keras.Model(model.input, model.get_layer("features").output, name="flower_features").save(partial)
    os.replace(partial, args.out)
    extractor = flower_features(args.out)
    print("FD to 4,096 real flowers (1,000 images each):")
    for size, name, value in separation_table(extractor, args.seed):
        print(f"  {size:>2} px  {name:<34} {value:9.4f}")


if __name__ == "__main__":
    main()
