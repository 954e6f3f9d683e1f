"""``python -m ddsec`` runs the command-line interface."""

from ddsec.cli import main

if __name__ == "__main__":
    main()
