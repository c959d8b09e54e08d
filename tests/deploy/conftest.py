"""tests/deploy: the deployment artifacts (conf/, vagrant/, README) checked as far as this
machine allows.  tests/conftest.py's `installed` fixture and lab/ are shared."""
