# A package only so setuptools installs the revision files; Alembic skips this file.
