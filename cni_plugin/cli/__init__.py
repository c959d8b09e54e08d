"""Console entry points (see setup.cfg): each module here has a main()."""
