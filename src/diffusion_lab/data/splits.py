"""The names of a dataset's splits, which the datamodule serves and the commands accept (``real_split=``,
``split=``)."""

SPLITS = ("train", "val", "test")
