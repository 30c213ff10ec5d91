"""Ask/tell active learning on your own data: ntkal proposes, a person (here: the dataset) labels.

Run: .venv/bin/python examples/ask_tell.py
"""
import torch

from ntkal import ActiveLearner, build_model, load_dataset
from ntkal.training import TrainConfig

data = load_dataset("digits")
torch.manual_seed(0)
model = build_model("mlp", data.in_shape, data.num_classes, width=128)

learner = ActiveLearner(
    model, "auto", data.x_train,             # any registered strategy name, or a Strategy object
    num_classes=data.num_classes,
    train_config=TrainConfig(epochs=60, batch_size=32),
    subset=500,                              # score a random 500 of the unlabelled pool per query
    seed=0,
)

# A few labels to start with (here taken from the dataset; in practice, from your annotators).
start = [int((data.y_train == c).nonzero()[0]) for c in range(data.num_classes)]
learner.teach(start, data.y_train[start].tolist())

for cycle in range(5):
    learner.fit()                                        # SGD, warm-started from the last cycle
    print(f"{len(learner.labelled_indices):4d} labels: test accuracy {learner.score(data.x_test, data.y_test):.3f}")
    ask = learner.query(10)                              # pool indices to label next
    learner.teach(ask, data.y_train[ask].tolist())       # ... the labels your annotators gave

learner.save("runs/ask_tell_state.pt")                   # the whole active-learning state
