"""One settings model for every framework and the environment.

:mod:`.values` names each key and checks its value; :mod:`.model` reads the keys
from a framework's settings and the environment, in one order of precedence;
:mod:`.build` turns the settings into a dispatcher and a client.
"""
