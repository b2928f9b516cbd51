"""The application behind `recgen train` / `recgen sample`: image generators built on recgen.nn
(recgen.app.models), their training loop and checkpoints (recgen.app.train, with the command-line
parsers in recgen.app.cli), the digits data and image folders (recgen.app.data), and the scores of
samples (recgen.app.digits_classifier, recgen.app.sample_scores).

    from recgen.app.train import train
    summary = train("row-lstm", epochs=1, out="runs/row-lstm")

The library (recgen.nn, recgen.ops, recgen.functional, recgen.convert, ...) never imports this
package; importing it imports nothing else.
"""
