from django.urls import path

from sync import views

urlpatterns = [path("", views.dashboard, name="dashboard")]
