"""Gradio widget of the neural_collapse metric, as evaluate Spaces run it (``python app.py``).

Importing this file needs neither gradio nor a network: the widget is only built under ``__main__``.
The widget takes one sample per row: ``features`` a JSON list of d floats, ``labels`` an int.
"""

from pathlib import Path

import evaluate
from evaluate.utils import launch_gradio_widget  # imports gradio lazily, when called


def main():
    # the script beside this file: the same module in a Space, the repo and the installed package
    module = evaluate.load(str(Path(__file__).resolve().with_name("neural_collapse.py")))
    launch_gradio_widget(module)  # raises ImportError when gradio is not installed


if __name__ == "__main__":
    main()
