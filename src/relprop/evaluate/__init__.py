"""Are the attributions right? The RAP paper's checks, batched and shardable: region
perturbation (``perturbation``), localisation against boxes and masks (``localisation``) and
stability under invisible noise (``stability``); ``data`` reads the data set, ``run`` measures
it (one process or many under torchrun), ``report`` writes the figures."""
