"""The card templates, kept once here and shipped inside hf_collapse as ``hf_collapse.model_cards``
(read through ``importlib.resources`` by ``hf_collapse.integrations.model_card``):
``collapse_model_card.md.j2`` (a pre-measured model) and ``measurements_dataset_card.md.j2`` (a Hub
dataset of measurement rows)."""
