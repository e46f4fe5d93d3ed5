"""The ``neural_collapse`` evaluate module, shipped inside hf_collapse as ``hf_collapse.evaluate_module``
(see ``hf_collapse.integrations.metric``). evaluate loads ``neural_collapse.py`` from this folder."""
