"""``mysimbdp`` subcommands: each module has ``register(subparsers)`` and sets ``func``.

``func(args)`` returns the exit code. ``args.settings_loader()`` gives the settings.
"""
