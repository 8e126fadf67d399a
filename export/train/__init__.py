"""``hipcad train``: fine-tune an EfficientNet on hip halves cut the way the paper cut them
(:mod:`.halves` the samples, :mod:`.augment`, :mod:`.model`, :mod:`.loop`, :mod:`.cli` the command)."""
