"""The models, plain ``nn.Module``s that import nothing of accelerate, datasets or wandb: the
sentiment classifier of the reference article (``sentiment``), the language model that pre-trains
its encoder (``language``), and word vectors for its embedding (``vectors``)."""
