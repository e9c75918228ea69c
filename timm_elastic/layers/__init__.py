from .elastic import Elastic, RESAMPLE_MODES, check_elastic_args, pop_elastic_args, split_paths
