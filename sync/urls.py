"""The user-facing pages: the dashboard and signing in and out."""

from django.contrib.auth import views as auth_views
from django.urls import path

from sync import hooks, oauth, views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    # Google OAuth web flow; "google-connect" with an account id reconnects that account.
    path("google/connect/", oauth.google_connect, name="google-connect"),
    path("google/connect/<int:account_id>/", oauth.google_connect, name="google-connect"),
    path("google/callback/", oauth.google_callback, name="google-callback"),
    path("hooks/google/", hooks.google_hook, name="google-hook"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
