"""The drivers: config checks at the entry point (`validation`), the RiFT
pipeline stage by stage (`pipeline`), studies over seeds (`study`) and the
MRC ranking's stability check (`mrc_stability`). Only these (and the
training loop's entry) read a whole config."""
