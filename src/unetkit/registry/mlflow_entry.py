"""The file MLflow runs to build an exported unetkit model (MLflow's "models from code"): nothing is
unpickled at load time, the model is `UnetkitPyfunc` from the installed unetkit. Only MLflow runs
this file (`unetkit.registry.mlflow_model.export_version` hands it over by path); nothing imports it."""

from mlflow.models import set_model

from unetkit.registry.mlflow_model import UnetkitPyfunc

set_model(UnetkitPyfunc())
