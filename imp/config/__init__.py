"""The config schema (`schema`: every key, its type, default and meaning) and the shared
parser of experiment variants (`variants`: `get_config(arg)`)."""
