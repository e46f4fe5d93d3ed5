"""The Hugging Face side: hooks and collection passes, the Trainer, measured folders, model cards, the Hub
and the evaluate module registration. Imports ``core``; never ``study`` or ``cli``."""
