"""The user-facing pages: the dashboard (and its two endpoints), Google's OAuth flow and push,
signing in and out."""

from django.contrib.auth import views as auth_views
from django.urls import path

from sync import hooks, oauth, views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("dashboard/sync/", views.DashboardSyncView.as_view(), name="dashboard-sync"),
    path("dashboard/accounts/<int:account_id>/", views.dashboard_account, name="dashboard-account"),
    # Google OAuth web flow; "google-connect" with an account id reconnects that account.
    path("google/connect/", oauth.google_connect, name="google-connect"),
    path("google/connect/<int:account_id>/", oauth.google_connect, name="google-connect"),
    path("google/callback/", oauth.google_callback, name="google-callback"),
    path("hooks/google/", hooks.google_hook, name="google-hook"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
