"""`python -m core`: the command line and its shared console style."""
