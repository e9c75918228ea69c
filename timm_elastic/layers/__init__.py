from .elastic import Elastic, RESAMPLE_MODES, check_elastic_args, split_paths
