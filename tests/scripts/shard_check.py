"""Launched by tests with ``accelerate launch``: which training examples each process gets.

Builds the trainer's own dataloaders over examples whose single token encodes their index,
prepares them with Accelerate, runs two epochs and writes, from the main process, the indices
every process saw per epoch (gathered across processes) to the JSON file given as argument.
"""

import json
import sys

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tokenizers import Tokenizer, models

from trainer.data import DataConfig, PreparedData, build_dataloaders
from trainer.data.labels import LabelMap

N, BATCH = 203, 8

accelerator = Accelerator(cpu=not torch.accelerator.is_available())
rows = {"input_ids": [[i + 2] * (1 + i % 17) for i in range(N)], "label": [i % 2 for i in range(N)]}
rows["length"] = [len(ids) for ids in rows["input_ids"]]
train = datasets.Dataset.from_dict(rows)
tokenizer = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]"))
data = PreparedData(train, train.select(range(10)), tokenizer, LabelMap(["negative", "positive"]), {})
loader, _ = build_dataloaders(data, DataConfig(group_by_length=True), BATCH, BATCH, accelerator.num_processes, seed=5)
sampler = loader.batch_sampler
loader = accelerator.prepare(loader)

epochs = []
for epoch in range(2):
    sampler.set_epoch(epoch)
    loader.set_epoch(epoch)
    seen = [int(batch["input_ids"][i, 0]) - 2 for batch in loader for i in range(len(batch["input_ids"]))]
    epochs.append(gather_object([{"rank": accelerator.process_index, "seen": seen}]))
if accelerator.is_main_process:
    with open(sys.argv[1], "w") as f:
        json.dump({"world_size": accelerator.num_processes, "epochs": epochs}, f)
accelerator.wait_for_everyone()
accelerator.end_training()  # destroys the process group: no abort from gloo threads at exit
