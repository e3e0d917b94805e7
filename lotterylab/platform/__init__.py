"""The science core, free of Ray: specs, data, models, masks, training, IMP, metrics, store."""
