"""``python -m fedpriv.train`` runs the ``fedpriv-train`` Hydra app."""

from fedpriv.cli.train import main

if __name__ == "__main__":
    main()
