"""Adapters to third-party libraries, installed as ``rdd_integrations``.

Each module is a plugin loaded through the ``rdd_plugins`` entry-point group, exactly like an
outside plugin. Third-party imports (torchvision, torchattacks, timm, robustbench) live only here.
"""
