"""Configs: the schema (`schema`: every key, its type, default and meaning), the shared
parser of experiment variants (`variants`: `get_config(arg)`), reading experiment files by
path (`files`) and the default experiment that ships in the package (`digits`)."""
