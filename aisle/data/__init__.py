"""The shop: synthetic catalog/sessions generator, on-disk format, ESCI loader."""
