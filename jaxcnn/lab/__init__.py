"""The measuring lab: benchmark harness and its torch arms, profiling, deviceless GPU
compiles and their kernel census. The core (models, training, data) never imports it;
the scripts ``bench.py``, ``profile_models.py``, ``gpu_census.py`` and
``compare_torch.py`` do."""
