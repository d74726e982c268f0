"""Do samples of the digits network look like digits of every class?

An SVC trained on the train split of the fixed digits split labels 500 samples; prints its
test accuracy, the class histogram of the samples and the mean confidence.

    python benchmarks/digits_samples_check.py
"""

import numpy as np
import torch
from sklearn.svm import SVC

import odediff
from odediff.zoo import load
from odediff.zoo.digits import load_data

torch.set_num_threads(1)
xtr, ytr = load_data("train")
xte, yte = load_data("test")
clf = SVC(probability=True, random_state=0).fit(xtr.reshape(len(xtr), -1).numpy(), ytr.numpy())
print("SVC test accuracy", clf.score(xte.reshape(len(xte), -1).numpy(), yte.numpy()))
print(
    "mean confidence on real test digits", clf.predict_proba(xte.reshape(len(xte), -1).numpy()).max(1).mean()
)
m = load("digits")
for solver, nfe in [("adams", 10), ("euler", 50)]:
    with torch.no_grad():
        x = odediff.sample(
            m, shape=(500, 1, 8, 8), solver=solver, nfe=nfe, generator=torch.Generator().manual_seed(0)
        )
    p = clf.predict_proba(x.clamp(-1, 1).reshape(500, -1).numpy())
    print(
        solver,
        nfe,
        "histogram",
        np.bincount(p.argmax(1), minlength=10).tolist(),
        f"mean confidence {p.max(1).mean():.3f}",
    )
